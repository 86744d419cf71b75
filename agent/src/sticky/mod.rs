//! Session stickiness: the cookie codec, its Set-Cookie rendering, and target selection.
pub mod cookie;
pub mod select;
pub mod set_cookie;
