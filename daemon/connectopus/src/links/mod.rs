//! Link codecs: how link messages travel over each kind of backend.

pub mod tcp;
pub mod tls;
pub mod tls_records;
