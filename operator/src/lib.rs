//! streamjob-operator: the StreamJob API and its reconciler.
