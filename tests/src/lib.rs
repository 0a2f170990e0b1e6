//! Shared harness for the end-to-end tests: real redis-server, real Kafka-protocol broker, real processes.
