//! The history of every device's numeric fields (issue 12): raw samples and rollups in sled.

pub(crate) mod api;
pub(crate) mod codec;
pub(crate) mod raw;
pub(crate) mod samples;
