//! Session stickiness: the cookie codec, the pin decision, and the cookie's Set-Cookie header.
//! Which target a new session gets is balancing's (`crate::balance`).
pub mod cookie;
pub mod pin;
pub mod set_cookie;
