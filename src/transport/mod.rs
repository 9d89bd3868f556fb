//! Transports: how a source's payloads are fetched. Each payload is handed to the source
//! type's parser, whichever transport brought it.

pub mod file;
pub mod http;
pub mod mqtt;
