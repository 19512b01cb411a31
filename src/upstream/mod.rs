//! Where an initiator's stream goes: [`route`] turns a domain into ordered connection candidates (static
//! routes, reverse-proxy upstream, DNS SRV with A/AAAA fallback), [`connect`] dials them with a timeout and
//! bounded retries.
pub mod connect;
pub mod route;
