//! capillary-eap (under construction).
#![forbid(unsafe_code)]
