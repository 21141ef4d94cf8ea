//! The one error type of the protocol crate: every decoder returns it, so a
//! server can turn any bad input into an `Error` frame with a stable code.

/// Why bytes from a peer were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    #[error("malformed JSON frame: {0}")]
    BadJson(String),
    #[error("unsupported protocol version {0}")]
    Version(u32),
    #[error("frame has no body")]
    EmptyFrame,
    #[error("{field} is {len} bytes, limit is {limit}")]
    StringTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("batch claims {claimed} events, limit is {limit}")]
    TooManyEvents { claimed: usize, limit: usize },
    #[error("batch count {claimed} does not match {actual} decoded events")]
    CountMismatch { claimed: usize, actual: usize },
    #[error("batch payload decompresses beyond {limit} bytes")]
    BatchTooLarge { limit: usize },
    #[error("compression error: {0}")]
    Compression(String),
    #[error("unknown codec {0}")]
    UnknownCodec(i32),
    #[error("unknown zstd dictionary {0}")]
    UnknownDictionary(u32),
    #[error("unknown batch encoding {0}")]
    UnknownEncoding(u32),
    #[error(
        "invalid channel name {0:?}: expected room:<id> or group:<id> with id [A-Za-z0-9_-]{{1,64}}"
    )]
    BadChannel(String),
    #[error("varint length prefix is malformed")]
    BadLengthPrefix,
}

impl ProtoError {
    /// Stable snake_case code for `Error` frames and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ProtoError::FrameTooLarge { .. } => "frame_too_large",
            ProtoError::Malformed(_) | ProtoError::EmptyFrame | ProtoError::BadLengthPrefix => {
                "malformed_frame"
            }
            ProtoError::BadJson(_) => "malformed_json",
            ProtoError::Version(_) => "unsupported_version",
            ProtoError::StringTooLong { .. } => "string_too_long",
            ProtoError::TooManyEvents { .. }
            | ProtoError::CountMismatch { .. }
            | ProtoError::BatchTooLarge { .. }
            | ProtoError::UnknownEncoding(_) => "bad_batch",
            ProtoError::Compression(_)
            | ProtoError::UnknownCodec(_)
            | ProtoError::UnknownDictionary(_) => "bad_compression",
            ProtoError::BadChannel(_) => "bad_channel",
        }
    }
}

impl From<prost::DecodeError> for ProtoError {
    fn from(e: prost::DecodeError) -> Self {
        ProtoError::Malformed(e.to_string())
    }
}
