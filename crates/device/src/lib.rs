//! capillary-device (under construction).
#![forbid(unsafe_code)]
