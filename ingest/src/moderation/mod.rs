//! Moderation on the ingest side: word lists, room moderators, mutes, room
//! settings and their audit trail.

pub mod filter;
