//! capillary-network (under construction).
#![forbid(unsafe_code)]
