//! FILT clauses, one per line: each parsed alone and all together as a query, which is then evaluated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::query::MAX_CLAUSES;
use smart_proto::{Clause, Query};
use smart_proto_fuzz::{check_error, check_query};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let clauses: Vec<_> = lines.iter().map(|line| Clause::parse(line)).collect();
    for (line, clause) in lines.iter().zip(&clauses) {
        if let Err(e) = clause {
            check_error(e, line.len());
        }
    }

    match Query::parse(&lines) {
        Ok(query) => {
            assert!(lines.len() <= MAX_CLAUSES);
            // The query keeps each clause, filters and sorts each in the order given.
            let mut filters = Vec::new();
            let mut sorts = Vec::new();
            for clause in clauses {
                match clause {
                    Ok(Clause::Filter(f)) => filters.push(f),
                    Ok(Clause::Sort(s)) => sorts.push(s),
                    Err(e) => panic!("query accepted a clause that alone is refused: {e}"),
                }
            }
            assert_eq!(query.filters, filters);
            assert_eq!(query.sorts, sorts);
            check_query(&query);
        }
        Err(e) => {
            check_error(&e, text.len());
            assert!(
                lines.len() > MAX_CLAUSES || clauses.iter().any(Result::is_err),
                "query refused clauses that each parse: {e}"
            );
        }
    }
});
