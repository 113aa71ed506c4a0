//! Request execution: [`forward_batch`] (batch layout and KV slot allocation),
//! [`model_runner`] (model + KV pools + sampling) and [`sampler`].

pub mod cuda;
pub mod device;
pub mod forward_batch;
pub mod model_runner;
pub mod sampler;
