//! The one adapter policy of every GPU test (and of `cargo xtask long-context`'s tests).
//!
//! | environment | no adapter | adapter |
//! |---|---|---|
//! | nothing set | the test prints `SKIPPED: no GPU adapter …` and returns | runs |
//! | `RETNET_REQUIRE_GPU=1` (CI) | the test **fails** | runs |
//! | `RETNET_SKIP_GPU_TESTS=1` | the test prints `SKIPPED: RETNET_SKIP_GPU_TESTS=1` and returns, without looking for an adapter | same |
//!
//! Both variables take only `1` (or empty, meaning unset): any other value (`0`, `true`, `yes`)
//! is a failure of every GPU test, not a guess; both set at once is a failure too. Any error
//! other than "no adapter" (a device that fails to open, bad `RETNET_BACKEND`) always fails.

use retnet_runtime::{Device, DeviceOptions, RuntimeError};
use std::sync::{Arc, OnceLock};

/// What a GPU test does when it finds no adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No adapter: skip with a message (nothing set).
    SkipWithoutAdapter,
    /// No adapter: fail (`RETNET_REQUIRE_GPU=1`).
    Require,
    /// Skip without looking (`RETNET_SKIP_GPU_TESTS=1`).
    Skip,
}

/// `Ok(true)` for `1`, `Ok(false)` for unset or empty, else the reason.
fn switch(name: &str) -> Result<bool, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Ok(v) if v.is_empty() => Ok(false),
        Ok(v) if v == "1" => Ok(true),
        Ok(v) => Err(format!(
            "{name}={v:?}: this switch takes only `1` (or unset); see docs/testing.md"
        )),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// The policy the environment asks for, or why it is contradictory or malformed.
pub fn try_policy() -> Result<Policy, String> {
    match (
        switch("RETNET_REQUIRE_GPU")?,
        switch("RETNET_SKIP_GPU_TESTS")?,
    ) {
        (true, true) => {
            Err("RETNET_REQUIRE_GPU=1 and RETNET_SKIP_GPU_TESTS=1 contradict each other".into())
        }
        (true, false) => Ok(Policy::Require),
        (false, true) => Ok(Policy::Skip),
        (false, false) => Ok(Policy::SkipWithoutAdapter),
    }
}

/// [`try_policy`], failing the test on a malformed environment.
#[track_caller]
pub fn policy() -> Policy {
    try_policy().unwrap_or_else(|why| panic!("{why}"))
}

/// Opens a device with `options` under the policy: `None` only when the policy says skip.
#[track_caller]
pub fn open(options: &DeviceOptions) -> Option<Device> {
    let policy = policy();
    if policy == Policy::Skip {
        eprintln!("SKIPPED: RETNET_SKIP_GPU_TESTS=1");
        return None;
    }
    match pollster::block_on(Device::new(options)) {
        Ok(device) => Some(device),
        Err(RuntimeError::NoAdapter { backends }) if policy == Policy::SkipWithoutAdapter => {
            eprintln!(
                "SKIPPED: no GPU adapter on {backends} (apt-get install mesa-vulkan-drivers for \
                 lavapipe; RETNET_REQUIRE_GPU=1 makes this a failure)"
            );
            None
        }
        Err(e @ RuntimeError::NoAdapter { .. }) => {
            panic!("RETNET_REQUIRE_GPU=1 but there is no GPU adapter: {e}")
        }
        Err(e) => panic!("device creation failed: {e}"),
    }
}

/// The environment's device options (`RETNET_BACKEND`, `RETNET_ADAPTER`, …).
#[track_caller]
pub fn env_options() -> DeviceOptions {
    DeviceOptions::from_env().unwrap_or_else(|e| panic!("RETNET_* variables: {e}"))
}

/// The device shared by every test of one binary (opened once, its adapter printed once).
#[track_caller]
pub fn device() -> Option<&'static Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let device = open(&env_options())?;
            let info = device.adapter_info();
            eprintln!(
                "testing on {} ({:?}, {:?}), features {}",
                info.name,
                info.backend,
                info.device_type,
                device.features()
            );
            Some(device)
        })
        .as_ref()
}

/// A fresh device from the environment's options, for tests that count its objects or lose it.
#[track_caller]
pub fn new_device() -> Option<Arc<Device>> {
    new_device_with(&env_options())
}

/// A fresh device with `options`.
#[track_caller]
pub fn new_device_with(options: &DeviceOptions) -> Option<Arc<Device>> {
    open(options).map(Arc::new)
}
