//! The FILT query language (PROTOCOL.md §8).

use std::cmp::Ordering;

use crate::{Record, Result};

/// At most this many clauses per query.
pub const MAX_CLAUSES: usize = 64;

/// Filter operators.
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

/// One `filter:FIELD:OP:VALUE` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// `[A-Za-z0-9_]+`.
    pub field: String,
    /// The operator.
    pub op: Op,
    /// The value as given (may contain colons, may be empty).
    pub value: String,
}

/// Sort direction: `<` ascending, `>` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `<`.
    Ascending,
    /// `>`.
    Descending,
}

/// The sort kind word: accepted, does not change the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKind {
    /// `abc`.
    Abc,
    /// `123`.
    Num,
    /// empty.
    Unspecified,
}

/// One `sort:FIELD:DIR:KIND` clause.
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
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// A filter.
    Filter(Filter),
    /// A sort key.
    Sort(Sort),
}

/// A parsed FILT: filters (all must hold) and sort keys (first is primary).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// Filters, ANDed.
    pub filters: Vec<Filter>,
    /// Sort keys in priority order.
    pub sorts: Vec<Sort>,
}

impl Clause {
    /// Parse one clause.
    pub fn parse(clause: &str) -> Result<Clause> {
        let _ = clause;
        todo!()
    }
}

impl Query {
    /// Parse a list of clauses (at most [`MAX_CLAUSES`]).
    pub fn parse<S: AsRef<str>>(clauses: &[S]) -> Result<Query> {
        let _ = clauses;
        todo!()
    }
    /// The clauses that parse back to this query.
    pub fn to_clauses(&self) -> Vec<String> {
        todo!()
    }
    /// No filters and no sorts: the whole fleet, serial ascending.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.sorts.is_empty()
    }
    /// Whether a record passes every filter.
    pub fn matches(&self, record: &Record) -> bool {
        let _ = record;
        todo!()
    }
    /// The order of the sort keys, ties by `serial_number` ascending.
    pub fn compare(&self, a: &Record, b: &Record) -> Ordering {
        let _ = (a, b);
        todo!()
    }
    /// Filter and sort.
    pub fn apply<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> Vec<&'a Record> {
        let mut out: Vec<&Record> = records.into_iter().filter(|r| self.matches(r)).collect();
        out.sort_by(|a, b| self.compare(a, b));
        out
    }
}
