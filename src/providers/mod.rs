//! One folder per telephony provider: its payload types, its verifier, its API client and its
//! routes. Adding a provider means adding a folder here and one line in `http::public_router`.

pub mod jas;
pub mod telecmi;
