//! Events: identifiers and room names, the catalog of channels and event types, and the
//! envelopes an event travels in.

pub mod catalog;
pub mod envelope;
pub mod ids;

pub use envelope::{Event, PublishError, PublishRules, ValidPublish};
pub use ids::{RoomKey, RoomName, TenantId, UserId};
