//! A minimal server-sent-events parser (the `text/event-stream` format): bytes in, events out, whatever
//! the chunking. Comments (keep-alives) are skipped; `data` lines are joined with newlines; an event is
//! dispatched at a blank line.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (empty: the default `message`).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// Accumulates bytes and yields complete events.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl Parser {
    /// Feeds `bytes`; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line(&String::from_utf8_lossy(&line)) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            let dispatch = std::mem::take(&mut self.has_data);
            return dispatch.then_some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.current.event = value.to_owned(),
            "id" => self.current.id = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_chunking() {
        let stream = b": keep-alive\n\nid: 1\nevent: status\ndata: {\"status\":\"PENDING\"}\n\nid: 5\r\nevent: status\r\ndata: {\"a\":1}\r\ndata: x\r\n\r\n";
        for chunk in [1, 2, 7, stream.len()] {
            let mut parser = Parser::default();
            let events: Vec<Event> = stream.chunks(chunk).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(events.len(), 2, "chunks of {chunk}");
            assert_eq!(events[0].event, "status");
            assert_eq!(events[0].id.as_deref(), Some("1"));
            assert_eq!(events[0].data, "{\"status\":\"PENDING\"}");
            assert_eq!(events[1].data, "{\"a\":1}\nx");
        }
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing() {
        let mut parser = Parser::default();
        assert!(parser.feed(b"event: status\n\n\n").is_empty());
        assert_eq!(parser.feed(b"data:no-space\n\n")[0].data, "no-space");
    }
}
