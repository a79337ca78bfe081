//! capillary-radius (under construction).
#![forbid(unsafe_code)]
