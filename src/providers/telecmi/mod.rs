//! TeleCMI: lenient webhook decoding (JSON or form bodies).

pub mod events;
