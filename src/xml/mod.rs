//! XML for XMPP streams: the sans-IO [`framer`] that cuts a byte stream into frames carrying their original
//! bytes, and [`element`], small parsers that read what the session needs (stream headers, features, dialback)
//! out of a frame's bytes. Nothing here does I/O.

pub mod element;
pub mod framer;
pub mod rewrite;
