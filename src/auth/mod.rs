//! Authentication (JWT → [`Identity`]), the room policy, the browser origins allowed, and
//! development tokens.

pub mod dev;
pub mod jwt;
pub mod origins;
pub mod policy;

pub use dev::{DevToken, DevTokens};
pub use jwt::{AuthError, ClaimNames, Identity, Verified, Verifier};
pub use origins::AllowedOrigins;
pub use policy::{RoomError, RoomPolicy};
