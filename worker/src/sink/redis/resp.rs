//! RESP2, the Redis wire protocol, for the apply path: commands encoded straight into one buffer,
//! and replies read without building a value per `QUEUED`.
//!
//! Why by hand: a batch is one `MULTI`/`EXEC` of thousands of commands. Through the redis crate
//! each of them was a `Cmd` (two allocations), copied again into the packed pipeline, and answered
//! by a `QUEUED` that its parser turned into a `Value` with a `String`: over 40 % of the worker's
//! CPU per event (BENCHMARKS.md, "A hand-written RESP apply path"). The redis crate has no way to
//! send pre-encoded bytes or skip replies on an async connection. Everything else (the main
//! connection, Sentinel, claims, the read side) still goes through the redis crate.

use std::ops::Range;

/// Commands encoded back to back, as Redis reads them from a socket.
#[derive(Debug, Clone, Default)]
pub(crate) struct Commands {
    bytes: Vec<u8>,
    count: usize,
}

impl Commands {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Starts a command of `args` arguments (its name included); the caller adds exactly that
    /// many with [`Commands::arg`] and [`Commands::int`].
    pub(crate) fn command(&mut self, args: usize) -> &mut Self {
        self.count += 1;
        self.bytes.push(b'*');
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// A bulk-string argument; returns where its bytes are in [`Commands::bytes`].
    pub(crate) fn arg(&mut self, value: &[u8]) -> &mut Self {
        self.arg_at(value);
        self
    }

    /// Like [`Commands::arg`], returning where the argument's bytes are.
    pub(crate) fn arg_at(&mut self, value: &[u8]) -> Range<usize> {
        self.bytes.push(b'$');
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(value.len()).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        let start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
        start..start + value.len()
    }

    /// An integer argument, in decimal as Redis expects it.
    pub(crate) fn int(&mut self, value: i64) -> &mut Self {
        self.arg(itoa::Buffer::new().format(value).as_bytes())
    }

    /// Appends `bytes[range]` of another encoding verbatim (whole commands only).
    pub(crate) fn copy(&mut self, from: &Commands, range: Range<usize>, commands: usize) {
        self.bytes.extend_from_slice(&from.bytes[range]);
        self.count += commands;
    }

    /// Commands encoded so far.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Where the next command starts.
    pub(crate) fn position(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The commands read back, each as its arguments (name first). Stops at anything this
    /// encoder does not write.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = Vec<&[u8]>> + '_ {
        self.encoded().map(|c| c.iter().collect())
    }

    /// The commands read back without copying or allocating (the cluster path walks every
    /// command of every batch): each as its argument count and its arguments' encoding.
    pub(crate) fn encoded(&self) -> EncodedIter<'_> {
        EncodedIter {
            bytes: &self.bytes,
            at: 0,
        }
    }
}

/// One command of a [`Commands`], as encoded: `body` is its arguments' bulk strings back to back
/// (`$len\r\nbytes\r\n` each), what follows the command's `*args\r\n` header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoded<'a> {
    pub(crate) args: usize,
    pub(crate) body: &'a [u8],
}

impl<'a> Encoded<'a> {
    /// The arguments, name first.
    pub(crate) fn iter(&self) -> Bulks<'a> {
        Bulks {
            bytes: self.body,
            at: 0,
        }
    }
}

/// See [`Commands::encoded`].
pub(crate) struct EncodedIter<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for EncodedIter<'a> {
    type Item = Encoded<'a>;

    fn next(&mut self) -> Option<Encoded<'a>> {
        let (args, start) = decimal_line(self.bytes, self.at, b'*')?;
        let mut bulks = Bulks {
            bytes: self.bytes,
            at: start,
        };
        for _ in 0..args {
            bulks.next()?;
        }
        self.at = bulks.at;
        Some(Encoded {
            args,
            body: &self.bytes[start..bulks.at],
        })
    }
}

/// Bulk strings back to back, read one after the other (see [`Encoded::iter`]).
pub(crate) struct Bulks<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Bulks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, start) = decimal_line(self.bytes, self.at, b'$')?;
        let value = self.bytes.get(start..start.checked_add(len)?)?;
        self.at = start + len + 2;
        Some(value)
    }
}

/// Reads `marker`, a non-negative decimal and `\r\n` at `at`: the number and where the line
/// ends. By hand, digit by digit: `str::parse` after a UTF-8 check was a visible part of the
/// cluster path's profile.
fn decimal_line(bytes: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
    if bytes.get(at) != Some(&marker) {
        return None;
    }
    let mut n: usize = 0;
    let mut i = at + 1;
    loop {
        match *bytes.get(i)? {
            digit @ b'0'..=b'9' => {
                n = n.checked_mul(10)?.checked_add(usize::from(digit - b'0'))?;
            }
            b'\r' if i > at + 1 => return Some((n, i + 2)),
            _ => return None,
        }
        i += 1;
    }
}

/// One reply. `QUEUED` and `OK` are [`Reply::Status`] without their text kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// `+…`: a status line (`OK`, `QUEUED`).
    Status,
    /// `-CODE message`, as sent.
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    /// `None`: the nil array (`EXEC` after a watched key changed).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// An integer, or a bulk string holding one (`HMGET`, `TIME`).
    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// The bytes are not RESP: the connection cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from redis: {0}")]
pub(crate) struct ProtocolError(pub(crate) String);

/// Deeper nesting is not something Redis sends to these commands.
const MAX_DEPTH: usize = 4;

/// Parses one reply at the start of `input`: `Ok(None)` if more bytes are needed, else the reply
/// and how many bytes it took.
pub(crate) fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_at(input, 0, 0)
}

fn parse_at(
    input: &[u8],
    at: usize,
    depth: usize,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some((kind, line, next)) = line(input, at)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Reply::Status, next))),
        b'-' => Ok(Some((
            Reply::Error(String::from_utf8_lossy(line).into_owned()),
            next,
        ))),
        b':' => Ok(Some((Reply::Int(number(line)?), next))),
        b'$' => bulk(input, number(line)?, next),
        b'*' => array(input, number(line)?, next, depth),
        other => Err(ProtocolError(format!("unexpected type byte {other:#04x}"))),
    }
}

fn bulk(input: &[u8], len: i64, at: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if len < 0 {
        return Ok(Some((Reply::Bulk(None), at)));
    }
    let end = at + len as usize;
    if input.len() < end + 2 {
        return Ok(None);
    }
    if &input[end..end + 2] != b"\r\n" {
        return Err(ProtocolError("bulk string without its CRLF".into()));
    }
    Ok(Some((Reply::Bulk(Some(input[at..end].to_vec())), end + 2)))
}

fn array(
    input: &[u8],
    len: i64,
    mut at: usize,
    depth: usize,
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    if len < 0 {
        return Ok(Some((Reply::Array(None), at)));
    }
    if depth >= MAX_DEPTH {
        return Err(ProtocolError("arrays nested too deep".into()));
    }
    // Every element takes at least 3 bytes: never reserve more than the input can hold.
    let mut items = Vec::with_capacity((len as usize).min(input.len() / 3 + 1));
    for _ in 0..len {
        let Some((item, next)) = parse_at(input, at, depth + 1)? else {
            return Ok(None);
        };
        items.push(item);
        at = next;
    }
    Ok(Some((Reply::Array(Some(items)), at)))
}

/// A reply's first line: its type byte, the rest of the line, and where the next line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The line at `at`; `None` if incomplete.
fn line(input: &[u8], at: usize) -> Result<Option<Line<'_>>, ProtocolError> {
    let rest = input.get(at..).unwrap_or_default();
    // Lines are short here (statuses, numbers, lengths): a plain scan is enough.
    let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    match rest.get(..newline) {
        Some([kind, line @ .., b'\r']) => Ok(Some((*kind, line, at + newline + 1))),
        _ => Err(ProtocolError("a line without its type or CRLF".into())),
    }
}

/// A decimal integer (a reply's value or length). By hand: `EXEC` answers one per command.
fn number(line: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match line {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, line),
    };
    let bad = || ProtocolError(format!("not a number: {:?}", String::from_utf8_lossy(line)));
    if digits.is_empty() || digits.len() > 19 {
        return Err(bad());
    }
    // Accumulated with the sign applied digit by digit, so that i64::MIN parses too.
    let sign = if negative { -1 } else { 1 };
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(bad());
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(sign * i64::from(digit - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_as_redis_reads_them() {
        let mut c = Commands::default();
        c.command(3).arg(b"LPUSH").arg(b"k").arg(b"");
        c.command(3).arg(b"PEXPIRE").arg(b"k").int(-5);
        assert_eq!(
            c.bytes(),
            b"*3\r\n$5\r\nLPUSH\r\n$1\r\nk\r\n$0\r\n\r\n*3\r\n$7\r\nPEXPIRE\r\n$1\r\nk\r\n$2\r\n-5\r\n"
        );
        assert_eq!(c.len(), 2);
        let mut d = Commands::default();
        let at = d.command(2).arg(b"GET").arg_at(b"key");
        assert_eq!(&d.bytes()[at], b"key");
        let mut copy = Commands::default();
        copy.copy(&c, 0..c.position(), 2);
        assert_eq!(copy.bytes(), c.bytes());
        assert_eq!(copy.len(), 2);
        let read: Vec<Vec<&[u8]>> = c.iter().collect();
        assert_eq!(
            read,
            vec![
                vec![&b"LPUSH"[..], b"k", b""],
                vec![&b"PEXPIRE"[..], b"k", b"-5"]
            ]
        );
        let encoded: Vec<Encoded<'_>> = c.encoded().collect();
        assert_eq!(encoded.len(), 2);
        assert_eq!(encoded[0].args, 3);
        assert_eq!(encoded[0].body, b"$5\r\nLPUSH\r\n$1\r\nk\r\n$0\r\n\r\n");
        for (encoded, read) in encoded.iter().zip(&read) {
            assert_eq!(encoded.iter().collect::<Vec<_>>(), *read);
        }
        let long = vec![b'x'; 1234];
        let mut big = Commands::default();
        big.command(2).arg(b"GET").arg(&long);
        let only = big.encoded().next().expect("one command");
        assert_eq!(only.iter().nth(1), Some(&long[..]));
        assert!(Commands::default().encoded().next().is_none());
        let cut = Commands {
            bytes: c.bytes()[..c.bytes().len() - 3].to_vec(),
            count: 2,
        };
        assert_eq!(cut.encoded().count(), 1, "a truncated command is not read");
    }

    #[test]
    fn every_reply_type_is_parsed_and_its_length_counted() {
        let input = b"+QUEUED\r\n-WRONGTYPE Operation against a key\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*3\r\n:1\r\n-ERR x\r\n*1\r\n$0\r\n\r\n";
        let mut at = 0;
        let mut replies = Vec::new();
        while at < input.len() {
            let (reply, used) = parse(&input[at..]).unwrap().unwrap();
            replies.push(reply);
            at += used;
        }
        assert_eq!(
            replies,
            vec![
                Reply::Status,
                Reply::Error("WRONGTYPE Operation against a key".into()),
                Reply::Int(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(None),
                Reply::Array(Some(vec![
                    Reply::Int(1),
                    Reply::Error("ERR x".into()),
                    Reply::Array(Some(vec![Reply::Bulk(Some(Vec::new()))])),
                ])),
            ]
        );
        assert_eq!(Reply::Bulk(Some(b"17".to_vec())).as_int(), Some(17));
    }

    #[test]
    fn an_incomplete_reply_asks_for_more_and_garbage_is_an_error() {
        let whole = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(whole).unwrap().is_some());
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b"\r\n").is_err());
        assert!(parse(b":1\n").is_err());
        assert!(parse(b":x1\r\n").is_err());
        assert!(parse(b":\r\n").is_err());
        assert!(parse(b":-\r\n").is_err());
        assert!(parse(b":99999999999999999999\r\n").is_err());
        assert_eq!(
            parse(b":-9223372036854775807\r\n"),
            Ok(Some((Reply::Int(-i64::MAX), 23)))
        );
        assert_eq!(
            parse(b":-9223372036854775808\r\n"),
            Ok(Some((Reply::Int(i64::MIN), 23)))
        );
        assert_eq!(
            parse(b":9223372036854775807\r\n"),
            Ok(Some((Reply::Int(i64::MAX), 22)))
        );
        assert!(parse(b":9223372036854775808\r\n").is_err());
        assert!(parse(b"$2\r\nabcd\r\n").is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
    }
}
