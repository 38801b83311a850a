//! The FILT query language (PROTOCOL.md §8).
//!
//! A dashboard sends `{"type":"FILT","message":[CLAUSE, …]}`; each clause is a filter
//! `filter:FIELD:OP:VALUE` (all must hold) or a sort key `sort:FIELD:DIR:KIND` (first is primary).
//!
//! ```
//! use smart_proto::{Query, Record, Serial, Timestamp};
//!
//! let device = |serial: &str, battery: f64| {
//!     let mut r = Record::new(Serial::new(serial).unwrap(), "EET", Timestamp::UNIX_EPOCH);
//!     r.battery = Some(battery);
//!     r
//! };
//! let fleet = [device("0001", 20.0), device("0002", 80.0), device("0003", 60.0)];
//!
//! let query = Query::parse(&["filter:battery:>:50", "sort:battery:>:123"]).unwrap();
//! let serials: Vec<&str> = query.apply(&fleet).iter().map(|r| r.serial_number.as_str()).collect();
//! assert_eq!(serials, ["0002", "0003"]);
//! ```

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use memchr::memmem::Finder;

use crate::error::{VALUE_QUOTE, shorten};
use crate::record::{FieldValue, parse_number};
use crate::{Error, Record, Result};

/// At most this many clauses per query.
///
/// ```
/// let clauses = vec!["sort:battery:<:"; smart_proto::query::MAX_CLAUSES + 1];
/// assert!(smart_proto::Query::parse(&clauses).is_err());
/// ```
pub const MAX_CLAUSES: usize = 64;

/// Longest VALUE of a filter clause, in bytes (PROTOCOL.md §8).
///
/// ```
/// use smart_proto::{Clause, query::MAX_VALUE_BYTES};
///
/// assert!(Clause::parse(&format!("filter:country:=:{}", "a".repeat(MAX_VALUE_BYTES))).is_ok());
/// let err = Clause::parse(&format!("filter:country:=:{}", "a".repeat(MAX_VALUE_BYTES + 1))).unwrap_err();
/// assert!(err.to_string().ends_with("value is 257 bytes long, more than 256"), "{err}");
/// ```
pub const MAX_VALUE_BYTES: usize = 256;

/// Filter operators.
///
/// ```
/// use smart_proto::Op;
/// assert_eq!(Op::from_symbol(">="), Some(Op::Ge));
/// assert_eq!(Op::Ge.as_str(), ">=");
/// assert!(Op::Ge.is_numeric() && !Op::Contains.is_numeric());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `=`: case-insensitive substring of the text form.
    Contains,
    /// `==`: numerically equal.
    Eq,
    /// `<`.
    Lt,
    /// `>`.
    Gt,
    /// `<=`.
    Le,
    /// `>=`.
    Ge,
    /// `^`: starts with, case-sensitive, on the text form.
    StartsWith,
}

impl Op {
    /// Every operator, in the order error messages list them.
    ///
    /// ```
    /// assert_eq!(smart_proto::Op::ALL.len(), 7);
    /// ```
    pub const ALL: [Op; 7] = [
        Op::Contains,
        Op::Eq,
        Op::Lt,
        Op::Gt,
        Op::Le,
        Op::Ge,
        Op::StartsWith,
    ];

    /// The operator written as in a clause (`=`, `==`, `<`, `>`, `<=`, `>=`, `^`).
    ///
    /// ```
    /// assert_eq!(smart_proto::Op::StartsWith.as_str(), "^");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Contains => "=",
            Op::Eq => "==",
            Op::Lt => "<",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Ge => ">=",
            Op::StartsWith => "^",
        }
    }

    /// The operator written `symbol`, if there is one.
    ///
    /// ```
    /// use smart_proto::Op;
    /// assert_eq!(Op::from_symbol("="), Some(Op::Contains));
    /// assert_eq!(Op::from_symbol("~"), None);
    /// ```
    pub fn from_symbol(symbol: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == symbol)
    }

    /// Whether the operator compares numbers (`==`, `<`, `>`, `<=`, `>=`), so its VALUE must be one.
    ///
    /// ```
    /// assert!(smart_proto::Op::Eq.is_numeric());
    /// assert!(!smart_proto::Op::StartsWith.is_numeric());
    /// ```
    pub fn is_numeric(self) -> bool {
        !matches!(self, Op::Contains | Op::StartsWith)
    }
}

/// One `filter:FIELD:OP:VALUE` clause.
///
/// ```
/// use smart_proto::{Clause, Filter, Op};
///
/// let Clause::Filter(filter) = Clause::parse("filter:local_time:=:14:59").unwrap() else { panic!() };
/// assert_eq!(filter, Filter { field: "local_time".into(), op: Op::Contains, value: "14:59".into() });
/// assert_eq!(filter.to_string(), "filter:local_time:=:14:59");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// `[A-Za-z0-9_]+`.
    pub field: String,
    /// The operator.
    pub op: Op,
    /// The value as given (may contain colons, may be empty). For a numeric operator it is a number
    /// when parsed; a filter built by hand with a numeric operator and a non-number value matches nothing.
    pub value: String,
}

/// Sort direction: `<` ascending, `>` descending.
///
/// ```
/// use smart_proto::Direction;
/// assert_eq!(Direction::Ascending.as_str(), "<");
/// assert_eq!(Direction::Descending.as_str(), ">");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `<`.
    Ascending,
    /// `>`.
    Descending,
}

impl Direction {
    /// `<` or `>`.
    ///
    /// ```
    /// assert_eq!(smart_proto::Direction::Descending.as_str(), ">");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ascending => "<",
            Direction::Descending => ">",
        }
    }
}

/// The sort kind word: accepted, does not change the order (values sort by their type).
///
/// ```
/// use smart_proto::SortKind;
/// assert_eq!(SortKind::Num.as_str(), "123");
/// assert_eq!(SortKind::Unspecified.as_str(), "");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKind {
    /// `abc`.
    Abc,
    /// `123`.
    Num,
    /// empty.
    Unspecified,
}

impl SortKind {
    /// `abc`, `123` or the empty string.
    ///
    /// ```
    /// assert_eq!(smart_proto::SortKind::Abc.as_str(), "abc");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            SortKind::Abc => "abc",
            SortKind::Num => "123",
            SortKind::Unspecified => "",
        }
    }
}

/// One `sort:FIELD:DIR:KIND` clause.
///
/// ```
/// use smart_proto::{Clause, Direction, Sort, SortKind};
///
/// let clause = Clause::parse("SORT:postcode:>:abc").unwrap();
/// let sort = Sort { field: "postcode".into(), dir: Direction::Descending, kind: SortKind::Abc };
/// assert_eq!(clause, Clause::Sort(sort.clone()));
/// assert_eq!(sort.to_string(), "sort:postcode:>:abc");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// `[A-Za-z0-9_]+`.
    pub field: String,
    /// Direction.
    pub dir: Direction,
    /// Kind word.
    pub kind: SortKind,
}

/// One clause.
///
/// ```
/// use smart_proto::Clause;
///
/// assert!(matches!(Clause::parse("filter:battery:>=:50").unwrap(), Clause::Filter(_)));
/// assert!(matches!(Clause::parse("sort:battery:<:123").unwrap(), Clause::Sort(_)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// A filter.
    Filter(Filter),
    /// A sort key.
    Sort(Sort),
}

/// A parsed FILT: filters (all must hold) and sort keys (first is primary).
///
/// ```
/// use smart_proto::Query;
///
/// let query = Query::parse(&["filter:solmate_version:=:v2", "sort:postcode:>:abc"]).unwrap();
/// assert_eq!((query.filters.len(), query.sorts.len()), (1, 1));
/// assert!(Query::default().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// Filters; all must hold.
    pub filters: Vec<Filter>,
    /// Sort keys in priority order.
    pub sorts: Vec<Sort>,
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Clause {
    /// Parse one clause: `filter:FIELD:OP:VALUE` or `sort:FIELD:DIR:KIND`. The command word is
    /// case-insensitive; VALUE is everything after the third colon (it may contain colons or be empty);
    /// a sort clause may leave out `:KIND`. Errors are [`Error::Query`] and say what is wrong.
    ///
    /// ```
    /// use smart_proto::Clause;
    ///
    /// assert_eq!(Clause::parse("Filter:local_time:=:14:59").unwrap().to_string(), "filter:local_time:=:14:59");
    /// assert_eq!(Clause::parse("filter:country:=:").unwrap().to_string(), "filter:country:=:");
    ///
    /// let err = Clause::parse("filter:battery:~:50").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"bad query clause "filter:battery:~:50": unknown operator "~": expected one of = == < > <= >= ^"#
    /// );
    /// let err = Clause::parse("filter:battery:>=:full").unwrap_err();
    /// assert!(err.to_string().ends_with(r#"operator ">=" compares numbers, but "full" is not a number"#));
    /// ```
    pub fn parse(clause: &str) -> Result<Clause> {
        parse_clause(clause).map_err(|reason| Error::Query {
            clause: shorten(clause, VALUE_QUOTE),
            reason,
        })
    }
}

fn parse_clause(clause: &str) -> Result<Clause, String> {
    const SHAPE: &str = "expected filter:FIELD:OP:VALUE or sort:FIELD:DIR:KIND";
    let quote = |s: &str| shorten(s, VALUE_QUOTE);
    let (command, rest) = clause.split_once(':').ok_or(SHAPE)?;
    let is_filter = command.eq_ignore_ascii_case("filter");
    if !is_filter && !command.eq_ignore_ascii_case("sort") {
        return Err(format!(
            "unknown command {:?}: expected filter or sort",
            quote(command)
        ));
    }
    let mut parts = rest.splitn(3, ':');
    let field = parts.next().unwrap_or_default();
    if !is_field_name(field) {
        return Err(if field.is_empty() {
            "missing field name".to_owned()
        } else {
            format!(
                "field name {:?} may only contain letters, digits and _",
                quote(field)
            )
        });
    }
    let field = field.to_owned();
    if is_filter {
        let (Some(symbol), Some(value)) = (parts.next(), parts.next()) else {
            return Err("expected filter:FIELD:OP:VALUE".to_owned());
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "value is {} bytes long, more than {MAX_VALUE_BYTES}",
                value.len()
            ));
        }
        let op = Op::from_symbol(symbol).ok_or_else(|| {
            format!(
                "unknown operator {:?}: expected one of = == < > <= >= ^",
                quote(symbol)
            )
        })?;
        if op.is_numeric() && parse_number(value).is_none() {
            return Err(format!(
                "operator {:?} compares numbers, but {:?} is not a number",
                op.as_str(),
                quote(value)
            ));
        }
        Ok(Clause::Filter(Filter {
            field,
            op,
            value: value.to_owned(),
        }))
    } else {
        let dir = match parts.next() {
            Some("<") => Direction::Ascending,
            Some(">") => Direction::Descending,
            Some(other) => {
                return Err(format!(
                    "unknown direction {:?}: expected < (ascending) or > (descending)",
                    quote(other)
                ));
            }
            None => return Err("expected sort:FIELD:DIR:KIND".to_owned()),
        };
        let kind = match parts.next().unwrap_or_default() {
            "" => SortKind::Unspecified,
            "123" => SortKind::Num,
            word if word.eq_ignore_ascii_case("abc") => SortKind::Abc,
            other => {
                return Err(format!(
                    "unknown sort kind {:?}: expected abc, 123 or nothing",
                    quote(other)
                ));
            }
        };
        Ok(Clause::Sort(Sort { field, dir, kind }))
    }
}

/// Writes the clause text, `filter:FIELD:OP:VALUE`.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter:{}:{}:{}",
            self.field,
            self.op.as_str(),
            self.value
        )
    }
}

/// Writes the clause text, `sort:FIELD:DIR:KIND`.
impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sort:{}:{}:{}",
            self.field,
            self.dir.as_str(),
            self.kind.as_str()
        )
    }
}

/// Writes the clause text, which [`Clause::parse`] reads back.
impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clause::Filter(filter) => filter.fmt(f),
            Clause::Sort(sort) => sort.fmt(f),
        }
    }
}

/// A filter made ready to test many records: its number parsed, its needle lowercased and its
/// searcher built once.
#[derive(Debug)]
struct Test<'q> {
    field: &'q str,
    check: Check<'q>,
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few per query, never moved around; boxing would allocate per `Query::matches`"
)]
enum Check<'q> {
    /// Case-insensitive substring: a searcher for the lowercased needle.
    Contains(Finder<'q>),
    StartsWith(&'q str),
    Compare(Op, f64),
    /// A numeric operator with a non-number value (only in hand-built filters).
    Never,
}

impl<'q> Test<'q> {
    fn new(filter: &'q Filter) -> Test<'q> {
        let value = filter.value.as_str();
        let check = match filter.op {
            Op::Contains => {
                if value.bytes().any(|b| b.is_ascii_uppercase()) || !value.is_ascii() {
                    Check::Contains(Finder::new(&value.to_lowercase()).into_owned())
                } else {
                    Check::Contains(Finder::new(value))
                }
            }
            Op::StartsWith => Check::StartsWith(value),
            op => parse_number(value).map_or(Check::Never, |number| Check::Compare(op, number)),
        };
        Test {
            field: &filter.field,
            check,
        }
    }

    fn matches(&self, record: &Record) -> bool {
        let Some(value) = record.get(self.field) else {
            return false;
        };
        match &self.check {
            Check::Contains(finder) => {
                with_text(value, |text| contains_ignoring_case(text, finder))
            }
            Check::StartsWith(prefix) => with_text(value, |text| text.starts_with(prefix)),
            Check::Compare(op, wanted) => {
                let number = match value {
                    FieldValue::Num(x) => Some(x),
                    FieldValue::Str(s) => parse_number(s),
                    FieldValue::Bool(_) | FieldValue::Other(_) => None,
                };
                number.is_some_and(|x| compare_numbers(*op, x, *wanted))
            }
            Check::Never => false,
        }
    }
}

#[allow(
    clippy::float_cmp,
    reason = "`==` is exact numeric equality by definition"
)]
fn compare_numbers(op: Op, x: f64, wanted: f64) -> bool {
    match op {
        Op::Eq => x == wanted,
        Op::Lt => x < wanted,
        Op::Gt => x > wanted,
        Op::Le => x <= wanted,
        Op::Ge => x >= wanted,
        Op::Contains | Op::StartsWith => false,
    }
}

/// Runs `f` on the text form of a value: strings as they are, numbers in their shortest decimal form
/// (`350`, `92.5`), booleans `true`/`false`, lists and objects as compact JSON.
fn with_text<R>(value: FieldValue<'_>, f: impl FnOnce(&str) -> R) -> R {
    match value {
        FieldValue::Str(s) => f(s),
        FieldValue::Num(x) => {
            // The longest shortest form of an `f64` is about 330 bytes (`5e-324` in full): a stack
            // buffer, with a heap fallback that is never expected.
            let mut buf = StackText::<400>::new();
            if write!(buf, "{x}").is_ok() {
                f(buf.as_str())
            } else {
                f(&x.to_string())
            }
        }
        FieldValue::Bool(b) => f(if b { "true" } else { "false" }),
        FieldValue::Other(v) => f(&v.to_string()),
    }
}

/// A fixed-capacity text buffer on the stack; writing past its end is an error.
struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            bytes: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `str`s are written in.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Bytes of text lowercased per search on the stack (a needle is at most [`MAX_VALUE_BYTES`] long).
const CHUNK: usize = 2048;

/// Whether `text`, lowercased, contains the lowercased needle `finder` looks for; in time linear in the
/// text and the needle (a two-way search, `memchr::memmem`). ASCII text is lowercased in chunks on the
/// stack, so it costs no allocation; other text is lowercased as a whole, as `str::to_lowercase` does.
fn contains_ignoring_case(text: &str, finder: &Finder<'_>) -> bool {
    let needle = finder.needle().len();
    if needle == 0 {
        return true;
    }
    if !text.is_ascii() {
        return finder.find(text.to_lowercase().as_bytes()).is_some();
    }
    let bytes = text.as_bytes();
    if !bytes.iter().any(u8::is_ascii_uppercase) {
        return finder.find(bytes).is_some();
    }
    if needle > CHUNK / 2 {
        // Longer than a hand-built filter should be: no chunking.
        return finder.find(text.to_ascii_lowercase().as_bytes()).is_some();
    }
    // Chunks overlap by `needle - 1` bytes, so that every match lies whole inside one of them.
    let mut buf = [0_u8; CHUNK];
    let mut start = 0;
    loop {
        let end = bytes.len().min(start + CHUNK);
        let chunk = &mut buf[..end - start];
        chunk.copy_from_slice(&bytes[start..end]);
        chunk.make_ascii_lowercase();
        if finder.find(chunk).is_some() {
            return true;
        }
        if end == bytes.len() {
            return false;
        }
        start = end - (needle - 1);
    }
}

/// The order between values of one sort key, ascending: numbers, then strings, then booleans, then
/// lists and objects (equal among themselves). Numbers compare numerically, strings by code point.
fn compare_values(a: FieldValue<'_>, b: FieldValue<'_>) -> Ordering {
    fn rank(value: FieldValue<'_>) -> u8 {
        match value {
            FieldValue::Num(_) => 0,
            FieldValue::Str(_) => 1,
            FieldValue::Bool(_) => 2,
            FieldValue::Other(_) => 3,
        }
    }
    match (a, b) {
        (FieldValue::Num(x), FieldValue::Num(y)) => x.total_cmp(&y),
        (FieldValue::Str(x), FieldValue::Str(y)) => x.cmp(y),
        (FieldValue::Bool(x), FieldValue::Bool(y)) => x.cmp(&y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The filters of a [`Query`], ready to test many records ([`Query::matcher`]).
///
/// ```
/// use smart_proto::{Query, Record, Serial, Timestamp};
///
/// let mut record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
/// record.country = "Österreich".into();
/// let query = Query::parse(&["filter:country:=:ÖSTER", "filter:pv_connectors:>=:1"]).unwrap();
/// assert!(query.matcher().matches(&record));
/// ```
#[derive(Debug)]
pub struct Matcher<'q> {
    tests: Vec<Test<'q>>,
}

impl Matcher<'_> {
    /// Whether a record passes every filter, as [`Query::matches`] says.
    ///
    /// ```
    /// use smart_proto::{Query, Record, Serial, Timestamp};
    ///
    /// let record = Record::new(Serial::new("0001").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// let query = Query::parse(&["filter:owner:=:eet"]).unwrap();
    /// assert!(query.matcher().matches(&record));
    /// assert!(!Query::parse(&["filter:owner:=:x"]).unwrap().matcher().matches(&record));
    /// ```
    pub fn matches(&self, record: &Record) -> bool {
        self.tests.iter().all(|test| test.matches(record))
    }
}

impl Query {
    /// Parse a list of clauses (at most [`MAX_CLAUSES`], else [`Error::TooManyClauses`]). The first bad
    /// clause is the error.
    ///
    /// ```
    /// use smart_proto::{Error, Query};
    ///
    /// let query = Query::parse(&["filter:serial_number:=:0", "sort:serial_number:<:abc"]).unwrap();
    /// assert_eq!(query.to_clauses(), ["filter:serial_number:=:0", "sort:serial_number:<:abc"]);
    ///
    /// let err = Query::parse(&["sort:battery:<:", "search:battery"]).unwrap_err();
    /// assert_eq!(err.to_string(), r#"bad query clause "search:battery": unknown command "search": expected filter or sort"#);
    /// assert_eq!(Query::parse(&vec!["sort:battery:<:"; 65]), Err(Error::TooManyClauses(65)));
    /// ```
    pub fn parse<S: AsRef<str>>(clauses: &[S]) -> Result<Query> {
        if clauses.len() > MAX_CLAUSES {
            return Err(Error::TooManyClauses(clauses.len()));
        }
        let mut query = Query::default();
        for clause in clauses {
            match Clause::parse(clause.as_ref())? {
                Clause::Filter(filter) => query.filters.push(filter),
                Clause::Sort(sort) => query.sorts.push(sort),
            }
        }
        Ok(query)
    }

    /// The clauses that parse back to this query: filters first, then sort keys in priority order.
    ///
    /// ```
    /// use smart_proto::Query;
    ///
    /// let query = Query::parse(&["sort:battery:>:", "FILTER:local_time:^:14:"]).unwrap();
    /// assert_eq!(query.to_clauses(), ["filter:local_time:^:14:", "sort:battery:>:"]);
    /// assert_eq!(Query::parse(&query.to_clauses()).unwrap(), query);
    /// ```
    pub fn to_clauses(&self) -> Vec<String> {
        let filters = self.filters.iter().map(ToString::to_string);
        filters
            .chain(self.sorts.iter().map(ToString::to_string))
            .collect()
    }

    /// No filters and no sorts: the whole fleet, serial ascending.
    ///
    /// ```
    /// let query = smart_proto::Query::parse::<&str>(&[]).unwrap();
    /// assert!(query.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.sorts.is_empty()
    }

    /// Whether a record passes every filter (PROTOCOL.md §8): `=` is a case-insensitive substring of the
    /// field's text form (numbers in their shortest decimal form, booleans `true`/`false`); `^` a
    /// case-sensitive prefix of it; `==`, `<`, `>`, `<=`, `>=` compare numbers and numeric strings
    /// (`postcode` `"8020"`), and fail on other values. A missing or null field matches no filter.
    ///
    /// ```
    /// use smart_proto::{Query, Record, Serial, Timestamp};
    ///
    /// let mut record = Record::new(Serial::new("1234").unwrap(), "EET", Timestamp::UNIX_EPOCH);
    /// record.postcode = "8020".into();
    /// record.battery = Some(92.5);
    /// let matches = |clause: &str| Query::parse(&[clause]).unwrap().matches(&record);
    ///
    /// assert!(matches("filter:postcode:>=:8000"));
    /// assert!(matches("filter:battery:=:2.5"));
    /// assert!(matches("filter:solmate_version:=:V1"));
    /// assert!(matches("filter:postcode:^:80"));
    /// assert!(!matches("filter:owner:>:1"));
    /// assert!(!matches("filter:capacity:=:"));
    /// ```
    ///
    /// To test many records, build a [`Matcher`] once with [`Query::matcher`]: this prepares the filters
    /// anew on every call.
    pub fn matches(&self, record: &Record) -> bool {
        self.filters
            .iter()
            .all(|filter| Test::new(filter).matches(record))
    }

    /// The filters made ready to test many records: numbers parsed, `=` needles lowercased and their
    /// searchers built once. [`Matcher::matches`] then gives what [`Query::matches`] gives, without
    /// allocating for ASCII text.
    ///
    /// ```
    /// use smart_proto::{Query, Record, Serial, Timestamp};
    ///
    /// let fleet: Vec<Record> = ["0001", "0010", "0100"]
    ///     .iter()
    ///     .map(|s| Record::new(Serial::new(s).unwrap(), "EET", Timestamp::UNIX_EPOCH))
    ///     .collect();
    /// let query = Query::parse(&["filter:serial_number:=:10"]).unwrap();
    /// let matcher = query.matcher();
    /// let serials: Vec<&str> = fleet.iter().filter(|r| matcher.matches(r)).map(|r| r.serial_number.as_str()).collect();
    /// assert_eq!(serials, ["0010", "0100"]);
    /// ```
    pub fn matcher(&self) -> Matcher<'_> {
        Matcher {
            tests: self.filters.iter().map(Test::new).collect(),
        }
    }

    /// The order of the sort keys, the first being primary: values by type (numbers numerically, then
    /// strings by code point, then booleans, then lists and objects), missing or null values last in
    /// both directions. Ties end in `serial_number` ascending. The `KIND` word plays no part.
    ///
    /// ```
    /// use std::cmp::Ordering;
    /// use smart_proto::{Query, Record, Serial, Timestamp};
    ///
    /// let device = |serial: &str, battery: Option<f64>| {
    ///     let mut r = Record::new(Serial::new(serial).unwrap(), "EET", Timestamp::UNIX_EPOCH);
    ///     r.battery = battery;
    ///     r
    /// };
    /// let (low, high, none) = (device("3", Some(1.0)), device("2", Some(9.0)), device("1", None));
    /// let descending = Query::parse(&["sort:battery:>:123"]).unwrap();
    /// assert_eq!(descending.compare(&high, &low), Ordering::Less);
    /// assert_eq!(descending.compare(&low, &none), Ordering::Less);
    /// // Without sort keys: serial ascending.
    /// assert_eq!(Query::default().compare(&none, &high), Ordering::Less);
    /// ```
    pub fn compare(&self, a: &Record, b: &Record) -> Ordering {
        for sort in &self.sorts {
            let order = match (a.get(&sort.field), b.get(&sort.field)) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(x), Some(y)) => {
                    let order = compare_values(x, y);
                    match sort.dir {
                        Direction::Ascending => order,
                        Direction::Descending => order.reverse(),
                    }
                }
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        a.serial_number.as_str().cmp(b.serial_number.as_str())
    }

    /// The records that [match](Query::matches), in the [order](Query::compare) of the sort keys.
    ///
    /// ```
    /// use smart_proto::{Query, Record, Serial, Timestamp};
    ///
    /// let fleet: Vec<Record> = ["0002", "0010", "0001"]
    ///     .iter()
    ///     .map(|s| Record::new(Serial::new(s).unwrap(), "EET", Timestamp::UNIX_EPOCH))
    ///     .collect();
    /// let query = Query::parse(&["filter:serial_number:=:0"]).unwrap();
    /// let serials: Vec<&str> = query.apply(&fleet).iter().map(|r| r.serial_number.as_str()).collect();
    /// assert_eq!(serials, ["0001", "0002", "0010"]);
    /// ```
    pub fn apply<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> Vec<&'a Record> {
        let matcher = self.matcher();
        let mut out: Vec<&Record> = records.into_iter().filter(|r| matcher.matches(r)).collect();
        out.sort_by(|a, b| self.compare(a, b));
        out
    }
}

#[cfg(test)]
mod tests;
