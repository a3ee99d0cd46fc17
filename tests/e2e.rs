//! End-to-end tests: the real `dartsync` binary, as separate processes on
//! 127.0.0.1 (LAN discovery: inside network namespaces the test makes,
//! `netns`), each in its own temp folder. One test binary, one module per
//! area, shared plumbing in `util`.

mod brake;
mod cli;
mod cluster;
mod dashboard;
mod demo;
mod errors;
mod faults;
mod hostile;
mod hostile_client;
mod join;
mod netns;
mod pi;
mod preauth;
mod quickstart;
mod receive_only;
mod status_cli;
mod status_live;
mod storms;
mod sync;
mod tidy;
mod tracker_load;
mod tracker_restart;
mod tracker_trust;
mod trust_devices;
mod util;
mod versions;
