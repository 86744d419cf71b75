//! Errors as an operator reads them: every cause in the chain, each once.
//!
//! tether's error types follow one rule (the Rust API guidelines' and aya's): an error that
//! has a cause returns it from `source()` and leaves it out of its own message. Whatever prints
//! an error therefore prints the chain: [`Chain`], at the edge (main) and in logs. Some
//! libraries' errors (kube's, for one) also put their cause in their message; [`Chain`] leaves
//! out a cause its outer message already says.
use std::error::Error;
use std::fmt;

/// Displays an error and its causes, `outer: inner: innermost`, each once.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let message = error.to_string();
            if !message.is_empty() && !said.contains(&message) {
                write!(f, ": {message}")?;
            }
            said = message;
            cause = error.source();
        }
        Ok(())
    }
}

/// The first error in the chain whose message repeats its cause's message (so a printed
/// chain would say it twice), as `(message, cause)`.
pub fn repeated_cause(error: &(dyn Error + 'static)) -> Option<(String, String)> {
    let mut current = error;
    while let Some(cause) = current.source() {
        let (message, inner) = (current.to_string(), cause.to_string());
        if !inner.is_empty() && message.contains(&inner) {
            return Some((message, inner));
        }
        current = cause;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot pin /sys/fs/bpf/x")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot pin /sys/fs/bpf/x: {0}")]
    struct Twice(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_every_cause_once() {
        let error = Outer(std::io::Error::from_raw_os_error(1));
        assert_eq!(
            Chain(&error).to_string(),
            "cannot pin /sys/fs/bpf/x: Operation not permitted (os error 1)"
        );
        assert_eq!(repeated_cause(&error), None);
        let error = Twice(std::io::Error::from_raw_os_error(1));
        assert_eq!(
            repeated_cause(&error).map(|(_, cause)| cause),
            Some("Operation not permitted (os error 1)".into())
        );
        // A library error that says its cause itself: the chain still says it once.
        assert_eq!(
            Chain(&error).to_string(),
            "cannot pin /sys/fs/bpf/x: Operation not permitted (os error 1)"
        );
    }

    /// Every error variant of tether's that carries a cause, built with a real one: none may
    /// say its cause in its own message (printed as a chain, the cause would show twice).
    #[test]
    fn no_error_says_its_cause_twice() {
        use crate::dataplane::Error as Dataplane;
        use crate::session_key::KeyError;
        use std::path::PathBuf;
        let io = || std::io::Error::from_raw_os_error(1);
        let syscall = || aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: io(),
        };
        let path = || PathBuf::from("/sys/fs/bpf/tether/x");
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(Dataplane::Load {
                object: path(),
                source: Box::new(aya::EbpfError::FileError {
                    path: path(),
                    error: io(),
                }),
            }),
            Box::new(Dataplane::Program {
                program: "tether_steer",
                action: "load",
                source: syscall().into(),
            }),
            Box::new(Dataplane::Attach {
                program: "tether_steer",
                interface: "eth0".into(),
                source: syscall().into(),
            }),
            Box::new(Dataplane::Detach {
                interface: "eth0".into(),
                source: syscall().into(),
            }),
            Box::new(Dataplane::Pin {
                path: path(),
                source: syscall().into(),
            }),
            Box::new(Dataplane::OpenPin {
                path: path(),
                source: syscall().into(),
            }),
            Box::new(Dataplane::Map {
                name: "TARGETS".into(),
                source: syscall().into(),
            }),
            Box::new(Dataplane::MapWrite {
                what: "write a target",
                source: syscall().into(),
            }),
            Box::new(Dataplane::Io {
                what: "list interfaces".into(),
                source: io(),
            }),
            Box::new(KeyError::Read {
                path: path(),
                source: io(),
            }),
            Box::new(KeyError::Create {
                path: path(),
                source: io(),
            }),
        ];
        for error in &errors {
            assert_eq!(repeated_cause(error.as_ref()), None, "{error:?}");
            // As main prints it: every segment once.
            let printed = Chain(error.as_ref()).to_string();
            let segments: Vec<&str> = printed.split(": ").collect();
            for (i, segment) in segments.iter().enumerate() {
                assert!(
                    !segments[i + 1..].contains(segment),
                    "{printed:?} repeats {segment:?}"
                );
            }
            // The cause is there, once.
            assert_eq!(
                printed.matches("Operation not permitted").count(),
                1,
                "{printed}"
            );
        }
    }
}
