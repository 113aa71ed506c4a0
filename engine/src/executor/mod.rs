//! Request execution: per-request token sampling (more to come: batching, model runner glue).

pub mod sampler;
