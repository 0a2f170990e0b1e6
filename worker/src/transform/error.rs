//! Why an AnchorInfo payload was refused. The runtime dead-letters the record with
//! [`DecodeError::reason`] as the DLQ `reason` header and counts it under [`DecodeError::kind`].

/// A payload that is not a usable AnchorInfo event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the configured cap: refused before parsing.
    #[error("payload of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// The bytes are not UTF-8 (JSON must be).
    #[error("payload is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    /// The JSON ends early (a record cut in the middle).
    #[error("truncated JSON: {message}")]
    Truncated { message: String },
    /// Not JSON at all, or JSON followed by trailing garbage.
    #[error("invalid JSON: {message}")]
    InvalidJson { message: String },
    /// Valid JSON whose top level is not an object.
    #[error("expected a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    /// A known field with a value of the wrong JSON type.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    /// An integer that does not fit the field.
    #[error("field `{field}` is out of range: {value}")]
    OutOfRange { field: &'static str, value: String },
    /// A required field is absent or null. (`logTimestamp` may also be given as legacy `timestamp`.)
    #[error("missing required field `{field}`")]
    Missing { field: &'static str },
    /// `ids` is an empty array: an event with no receiver writes nothing anyone can read.
    #[error("field `ids` is empty")]
    EmptyIds,
    /// One element of `ids` is unusable as a Redis key.
    #[error("field `ids[{index}]` {problem}")]
    InvalidId { index: usize, problem: &'static str },
    /// The same field appears twice in one object.
    #[error("duplicate field `{field}`")]
    DuplicateField { field: &'static str },
}

impl DecodeError {
    /// Human-readable reason, for the DLQ record's `reason` header and logs.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// Short, low-cardinality label for metrics (`streamjob_decode_errors_total{kind=…}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::NotAnObject { .. } => "not_an_object",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::Missing { field } => match *field {
                "ids" => "missing_ids",
                "businessId" => "missing_business_id",
                "logTimestamp" => "missing_timestamp",
                "state" => "missing_state",
                _ => "missing_field",
            },
            DecodeError::EmptyIds => "empty_ids",
            DecodeError::InvalidId { .. } => "invalid_id",
            DecodeError::DuplicateField { .. } => "duplicate_field",
        }
    }

    pub(crate) fn from_json(err: serde_json::Error) -> Self {
        let message = err.to_string();
        if err.is_eof() {
            DecodeError::Truncated { message }
        } else {
            DecodeError::InvalidJson { message }
        }
    }
}
