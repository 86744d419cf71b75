//! Maps a field path (`services.echo.policy.hashOn.input`, `routes[0].service`) to the line and
//! column where it is written, so semantic errors can point at the YAML the user wrote.
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column, both starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Every path of a YAML document with where its key (or sequence item) starts.
#[derive(Debug, Default)]
pub struct Locations {
    positions: HashMap<String, Position>,
}

/// Where and why a YAML parser rejects `text`, if it does: for errors serde_yaml reports
/// without a location (or with a misleading message).
pub fn syntax_error(text: &str) -> Option<(Position, String)> {
    let mut walker = Walker::default();
    let error = Parser::new_from_str(text).load(&mut walker, true).err()?;
    let marker = error.marker();
    Some((
        Position {
            line: marker.line(),
            column: marker.col() + 1,
        },
        error.info().to_string(),
    ))
}

impl Locations {
    pub fn of(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // A document the parser rejects has no locations; serde_yaml reports that error itself.
        let _ = parser.load(&mut walker, false);
        Self {
            positions: walker.positions,
        }
    }

    /// The position of `path`, or of its nearest written ancestor (a defaulted field has none).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut candidate = path;
        loop {
            if let Some(position) = self.positions.get(candidate) {
                return Some(*position);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

impl Walker {
    /// Called for each node that starts; returns the path of that node, if it is a value.
    fn node_path(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let position = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { path, key }) => match key.take() {
                None => {
                    // This node is a key: remember where it is written.
                    let name = scalar.unwrap_or("?").to_string();
                    let full = join(path, &name);
                    self.positions.insert(full, position);
                    *key = Some(name);
                    None
                }
                Some(name) => Some(join(path, &name)),
            },
            Some(Frame::Sequence { path, index }) => {
                let full = format!("{path}[{index}]");
                *index += 1;
                self.positions.insert(full.clone(), position);
                Some(full)
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(ref value, ..) => {
                self.node_path(Some(value), mark);
            }
            Event::Alias(_) => {
                self.node_path(None, mark);
            }
            Event::MappingStart(..) => {
                // A mapping used as a key has no useful path; give it a placeholder.
                let path = self.node_path(None, mark).unwrap_or_default();
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(None, mark).unwrap_or_default();
                self.stack.push(Frame::Sequence { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "proxy:\n  listen: 127.0.0.1:8080\nroutes:\n  - match: {pathPrefix: /echo}\n    service: echo\nservices:\n  echo:\n    targets:\n      - {address: 127.0.0.1:9001}\n      - address: 127.0.0.1:9002\n        weight: 0\n";

    #[test]
    fn finds_keys_and_items() {
        let locations = Locations::of(DOC);
        let at = |path| locations.find(path).map(|p| (p.line, p.column));
        assert_eq!(at("proxy.listen"), Some((2, 3)));
        assert_eq!(locations.find("routes[0]").map(|p| p.line), Some(4));
        assert_eq!(at("routes[0].service"), Some((5, 5)));
        assert_eq!(at("routes[0].match.pathPrefix"), Some((4, 13)));
        assert_eq!(at("services.echo.targets[1].weight"), Some((11, 9)));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let locations = Locations::of(DOC);
        let position = locations
            .find("services.echo.policy.hashOn")
            .map(|p| p.line);
        assert_eq!(position, Some(7));
    }
}
