//! Shared by the two config targets: load a file and check what the loader says about it.

/// Loads `bytes` as a mesh file and checks the loader's answer.
///
/// The file is loaded once: `connectopus_config::check` is `load` with its findings taken
/// out of the result (the warnings of a file that loads, or every finding of one that does
/// not), so the findings are taken from the one `load` here the same way. Calling both, as
/// this did before, ran the whole loader twice per input for no code the second run reached.
pub fn exercise(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    // Lines as YAML counts them: `\r\n`, a lone `\r` and `\n` each end one.
    let lines = text.replace("\r\n", "\n").split(['\r', '\n']).count() as u32;
    let loaded = connectopus_config::load("fuzz.yml", bytes);
    let diagnostics = match &loaded {
        Ok(config) => connectopus_config::Diagnostics(config.warnings().to_vec()),
        Err(errors) => errors.clone(),
    };
    for d in diagnostics.iter() {
        // A place is inside the file: on one of its lines (or just past the last one).
        assert!(d.line <= lines + 1, "line {} of {lines}: {d:?}", d.line);
        if d.line == 0 {
            assert!(d.snippet.is_none(), "{d:?}");
        } else if d.line <= lines {
            assert!(d.snippet.is_some(), "a place without its line: {d:?}");
        }
        assert!(!d.message.is_empty());
    }
    let _ = diagnostics.to_string();
    match loaded {
        Ok(config) => {
            assert!(!diagnostics.has_errors());
            for name in config.nodes.keys() {
                assert!(config.node(name).is_ok());
            }
            let _ = config.node("\u{0}no such node").map_err(|e| e.to_string());
            assert_eq!(&config.source()[..], bytes);
        }
        Err(errors) => assert!(errors.has_errors(), "{errors}"),
    }
}
