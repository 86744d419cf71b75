//! Where models come from. A source builds a [`crate::model::Model`] and knows nothing of the
//! proxy or the maps.
pub mod file;
pub mod locate;
pub mod watch;
