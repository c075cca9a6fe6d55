//! `emit_members_page` with an arbitrary header, entries, limit and buffer:
//! the page never exceeds the limit, holds as many entries as fit and
//! decodes back equal; and arbitrary bytes behind `01 88` decode as a page
//! whose entries account for every byte.
//!
//! The checks are in `src/members_page.rs`; see README.md for running.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sky_fuzz::members_page::run(data));
