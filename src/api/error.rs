//! `ApiError`: Nomad's status code and exact plain-text message for a failed request.

use std::fmt;

use crate::http::Status;

/// A failed request: written as `text/plain; charset=utf-8`, no trailing newline.
/// A 404 with an empty message is written with no body and no Content-Type (unknown route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: Status,
    pub message: String,
}

impl ApiError {
    pub fn new(status: Status, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::BAD_REQUEST, message)
    }
    /// 404 with a message.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::NOT_FOUND, message)
    }
    /// 500 with a message.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::INTERNAL_SERVER_ERROR, message)
    }
    /// Nomad's `405 Invalid method`.
    pub fn invalid_method() -> ApiError {
        ApiError::new(Status::METHOD_NOT_ALLOWED, "Invalid method")
    }
    /// Nomad's `403 Permission denied`.
    pub fn permission_denied() -> ApiError {
        ApiError::new(Status::FORBIDDEN, "Permission denied")
    }
    /// An unknown path: 404, empty body, no Content-Type.
    pub fn no_route() -> ApiError {
        ApiError::new(Status::NOT_FOUND, "")
    }
    /// `400 Request body is empty`.
    pub fn empty_body() -> ApiError {
        ApiError::bad_request("Request body is empty")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A job that does not decode or validate: 400 with Nomad's text.
impl From<crate::state::jobs::error::JobError> for ApiError {
    fn from(e: crate::state::jobs::error::JobError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

/// The ACL layer's errors as Nomad answers them.
impl From<crate::acl::Error> for ApiError {
    fn from(e: crate::acl::Error) -> ApiError {
        use crate::acl::Error as E;
        let status = match &e {
            E::AlreadyBootstrapped(_) | E::NonexistentToken(_) | E::InvalidPolicy(_) => {
                Status::BAD_REQUEST
            }
            E::PermissionDenied => return ApiError::permission_denied(),
            E::TokenNotFound => Status::NOT_FOUND,
            E::TooManyOneTimeTokens => Status::TOO_MANY_REQUESTS,
            E::Rejected(_) | E::Persist(_) | E::Keys(_) => Status::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A state write that failed (nothing of it is visible): logged, and Nomad's 500.
pub fn store_err(e: crate::state::store::StoreError) -> ApiError {
    log::error!("state write failed: {e}");
    ApiError::internal(format!("failed to persist state: {e}"))
}
