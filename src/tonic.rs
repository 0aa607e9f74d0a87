//! tanker's refusals as tonic statuses (being written).
