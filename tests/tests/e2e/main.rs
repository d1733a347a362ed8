//! The end-to-end suite as one test binary: each module was once a binary of its own, each
//! linking the whole workspace. One binary links once, builds `letterme` once per run and
//! shares the harness world (`letterme_tests::world`). Run one test with
//! `cargo test -p letterme-tests --test e2e federation::NAME`.

mod api;
mod blobs;
mod cli_e2e;
mod devices;
mod federation;
mod init_tls;
mod kt;
mod mime;
mod outbound;
mod proxy;
mod smtp_in;
