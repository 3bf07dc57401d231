//! A tiny blocking QMP client for the tests and the `qm` test double: drives the real QEMU
//! (qemu-io, HMP commands) independently of the exporter's own client.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::{Value, json};

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> io::Result<Client> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut c = Client { reader: BufReader::new(s.try_clone()?), writer: s };
        c.read()?; // the greeting
        c.execute("qmp_capabilities", json!({}))?;
        Ok(c)
    }

    /// The next message that is not an event.
    fn read(&mut self) -> io::Result<Value> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let v: Value = serde_json::from_str(&line).map_err(io::Error::other)?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    pub fn execute(&mut self, command: &str, arguments: Value) -> io::Result<Value> {
        writeln!(self.writer, "{}", json!({ "execute": command, "arguments": arguments }))?;
        let r = self.read()?;
        match r.get("return") {
            Some(v) => Ok(v.clone()),
            None => Err(io::Error::other(format!("{command}: {r}"))),
        }
    }

    /// A human monitor command's output.
    pub fn hmp(&mut self, command_line: &str) -> io::Result<String> {
        let r = self.execute("human-monitor-command", json!({ "command-line": command_line }))?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }
}
