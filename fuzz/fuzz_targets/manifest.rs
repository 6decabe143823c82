//! `kubervisor check`'s path: any text read as a manifest stream is either refused with
//! an error or read into documents, each valid, invalid with its field errors, or another
//! kind; never a panic.
#![no_main]

use kubervisor_api::manifest::{Document, check_documents};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(documents) = check_documents(text) {
        for document in documents {
            match document {
                Document::Valid(kvs) => {
                    // A valid document resolves, and prints as the check prints it.
                    let spec = kvs.spec.resolve().expect("a valid document resolves");
                    assert!(!spec.breakers.is_empty());
                    let _ = serde_json::to_string(&kvs).expect("a valid document serialises");
                }
                Document::Invalid { errors, .. } => assert!(!errors.is_empty()),
                Document::Other { .. } => {}
            }
        }
    }
});
