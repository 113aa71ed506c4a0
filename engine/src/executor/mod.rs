//! Request execution: [`forward_batch`] (batch layout and KV slot allocation),
//! [`model_runner`] (model + KV pools + sampling), [`pending`] (launched steps not yet read)
//! and [`sampler`].

pub mod cuda;
pub mod device;
pub mod forward_batch;
pub mod model_runner;
pub mod pending;
pub mod sampler;
