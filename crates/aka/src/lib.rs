//! capillary-aka (under construction).
#![forbid(unsafe_code)]
