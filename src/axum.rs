//! tanker's refusals as axum responses (being written).
