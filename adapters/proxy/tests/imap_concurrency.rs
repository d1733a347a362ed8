//! The proxy's IMAP under several connections at once (issue 16): python's imaplib, two or
//! more connections per scenario, against the real listener on loopback over a real cache.
//! Each scenario is in `fixtures/concurrent.py`, which asserts what the RFCs require.
#![allow(clippy::unwrap_used)]

mod common;

use common::Proxy;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/concurrent.py");

fn run(name: &str) {
    Proxy::start().python(SCRIPT, name, &[]);
}

#[test]
fn expunge_is_never_lost() {
    run("expunge_is_never_lost");
}

#[test]
fn flag_updates_are_never_lost() {
    run("flag_updates_are_never_lost");
}

#[test]
fn uidvalidity_is_never_reused() {
    run("uidvalidity_is_never_reused");
}

#[test]
fn copy_and_move_into_the_selected_mailbox_are_announced() {
    run("copy_and_move_into_the_selected_mailbox_are_announced");
}

#[test]
fn a_fetch_racing_an_expunge_never_serves_an_empty_message() {
    run("a_fetch_racing_an_expunge_never_serves_an_empty_message");
}

#[test]
fn keywords_are_listed_and_announced() {
    run("keywords_are_listed_and_announced");
}

#[test]
fn subscriptions_follow_rfc3501() {
    run("subscriptions_follow_rfc3501");
}

#[test]
fn recent_is_seen_by_one_session() {
    run("recent_is_seen_by_one_session");
}

#[test]
fn address_edge_cases_in_envelope_and_search() {
    run("address_edge_cases_in_envelope_and_search");
}

#[test]
fn list_extended_in_full() {
    run("list_extended_in_full");
}

#[test]
fn condstore() {
    run("condstore");
}

#[test]
fn qresync() {
    run("qresync");
}

#[test]
fn authenticate_plain() {
    run("authenticate_plain");
}

#[test]
fn esearch() {
    run("esearch");
}

#[test]
fn multiappend() {
    run("multiappend");
}

#[test]
fn create_special_use() {
    run("create_special_use");
}

#[test]
fn binary() {
    run("binary");
}

#[test]
fn sort_and_thread() {
    run("sort_and_thread");
}

#[test]
fn imap4rev2() {
    run("imap4rev2");
}

#[test]
fn searchres() {
    run("searchres");
}

#[test]
fn a_huge_uid_set_costs_what_the_mailbox_holds() {
    run("a_huge_uid_set_costs_what_the_mailbox_holds");
}

#[test]
fn six_connections_at_random_keep_every_view_equal_to_a_fresh_select() {
    let out = Proxy::start().python(SCRIPT, "stress", &["5"]);
    println!("{out}");
}
