//! The YAML configuration file (agent/src/source/file.rs), on arbitrary text.
//!
//! Never a panic; an error names the file and says where (a line, or at least the field); a
//! valid file's model builds the proxy's tables and the kernel maps' plan without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tether::dataplane::plan::{self, KernelState};
use tether::metrics::Metrics;
use tether::source::file;
use tether::sticky::cookie::{CookieCodec, KEY_LEN};
use tether::table::Tables;

const FILE: &str = "fuzz.yaml";

static CODEC: LazyLock<CookieCodec> = LazyLock::new(|| CookieCodec::new(&[7u8; KEY_LEN]));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match file::parse(text, FILE) {
        Ok(loaded) => {
            let model = loaded.model;
            // A model that validated is one the proxy and the dataplane take as it is.
            for route in &model.routes {
                assert!(
                    model.services.contains_key(&route.service),
                    "route to unknown service {}",
                    route.service
                );
            }
            let metrics = Metrics::default();
            let tables = Tables::build(&model, &CODEC, &metrics, 1);
            for route in &model.routes {
                let _ = tables.service(&route.service);
            }
            let _ = plan::desired(&model, &KernelState::default());
        }
        Err(error) => {
            assert_eq!(error.file, FILE);
            // An empty file is the one error about the whole file, with nowhere to point.
            let empty = error.message.starts_with("the file is empty");
            assert!(
                error.line.is_some() || !error.field.is_empty() || empty,
                "an error that says neither where nor which field: {error:?}"
            );
            assert!(
                !error.message.is_empty(),
                "an error without a message: {error:?}"
            );
            assert!(error.to_string().starts_with(FILE));
        }
    }
});
