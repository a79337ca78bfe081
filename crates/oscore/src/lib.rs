//! OSCORE (RFC 8613), sans-IO: Security Context derivation (§3.2), message protection and
//! verification (§8) for [`capillary_coap::Message`], the OSCORE option (§6.1), the
//! Replay Window (§7.4) and Sender Sequence Number persistence (Appendix B.1).
//!
//! Algorithms: AES-CCM-16-64-128 (COSE 10) and HKDF-SHA-256 only.
//!
//! Not done here: sockets, storage (the driver persists the marks this crate hands out),
//! Group OSCORE, Outer block-wise (§4.1.3.4.2, the transport reassembles first), Echo-based
//! replay-window resynchronisation (Appendix B.1.2 alternative), Appendix B.2 context
//! re-derivation, Class I options (none are defined).
//!
//! ```
//! use capillary_coap::msg::{Code, Message, MessageType};
//! use capillary_oscore::{ContextParams, SecurityContext};
//!
//! let secret = [0x01u8; 16];
//! let mut client = SecurityContext::new(ContextParams::new(&secret, b"", b"\x01")).unwrap();
//! let mut server = SecurityContext::new(ContextParams::new(&secret, b"\x01", b"")).unwrap();
//! let mut req = Message::new(MessageType::Con, Code::GET, 1, vec![7]);
//! req.set_uri_path("/tv1");
//! let (wire, mut client_binding) = client.protect_request(&req).unwrap();
//! let (got, server_binding) = server.unprotect_request(&wire).unwrap();
//! assert_eq!(got, req);
//! let resp = Message::response_to(&got, Code::CONTENT, 0);
//! let wire = server.protect_response(&resp, &server_binding, false).unwrap();
//! assert_eq!(client.unprotect_response(&wire, &mut client_binding).unwrap(), resp);
//! ```
#![forbid(unsafe_code)]

mod cbor;
pub mod context;
pub mod crypto;
pub mod error;
pub mod message;
pub mod option;
pub mod replay;
pub mod secret;

pub use context::{ContextParams, PersistedState, RequestBinding, SecurityContext, SsnPersistence};
pub use error::{DecodeError, OscoreError};
pub use option::OscoreOption;
pub use secret::{AeadKey, CommonIv, MasterSalt, MasterSecret};
