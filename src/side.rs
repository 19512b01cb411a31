//! The two sides of an intercepted connection, named once and used everywhere.
//!
//! The *initiator* is the peer that connected to xmpptap (a server opening an S2S stream, or a client).
//! The *receiver* is the upstream server xmpptap connected to on the initiator's behalf.

use serde::Serialize;
use std::fmt;

/// Which peer of an intercepted connection something came from or concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The peer that connected to xmpptap.
    Initiator,
    /// The upstream server xmpptap connected to.
    Receiver,
}

impl Side {
    /// The other peer.
    pub fn peer(self) -> Side {
        match self {
            Side::Initiator => Side::Receiver,
            Side::Receiver => Side::Initiator,
        }
    }

    /// The direction of bytes that this side sends.
    pub fn sends(self) -> Direction {
        match self {
            Side::Initiator => Direction::Up,
            Side::Receiver => Direction::Down,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Initiator => "initiator",
            Side::Receiver => "receiver",
        })
    }
}

/// The direction bytes travel through xmpptap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the initiator toward the receiver (upstream).
    Up,
    /// From the receiver toward the initiator (downstream).
    Down,
}

impl Direction {
    /// The side that sends bytes in this direction.
    pub fn sender(self) -> Side {
        match self {
            Direction::Up => Side::Initiator,
            Direction::Down => Side::Receiver,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}
