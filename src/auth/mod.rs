//! Authentication (JWT → [`Identity`]) and the room policy.

pub mod jwt;
pub mod policy;

pub use jwt::{AuthError, ClaimNames, Identity, Verified, Verifier};
pub use policy::{RoomError, RoomPolicy};
