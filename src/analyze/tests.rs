use super::DEFAULT_PRIMARY_FUNCTIONS;
use super::*;

fn funcs() -> HashSet<String> {
    DEFAULT_PRIMARY_FUNCTIONS.iter().map(|s| s.to_string()).collect()
}

fn need(sql: &str) -> Need {
    analyze(sql, &funcs()).need
}

#[test]
fn reads_and_writes() {
    let table = [
        ("SELECT 1", Need::Read),
        ("select * from t where id = 1", Need::Read),
        ("SELECT pg_is_in_recovery()", Need::Read),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Need::Read),
        ("EXPLAIN SELECT 1", Need::Read),
        ("SHOW search_path", Need::Read),
        ("COPY t TO STDOUT", Need::Read),
        ("COPY (SELECT 1) TO STDOUT", Need::Read),
        ("VALUES (1), (2)", Need::Read),
        ("SELECT 1; SELECT 2", Need::Read),
        ("INSERT INTO t VALUES (1)", Need::Primary),
        ("UPDATE t SET a = 1", Need::Primary),
        ("DELETE FROM t", Need::Primary),
        ("CREATE TABLE t (a int)", Need::Primary),
        ("COPY t FROM STDIN", Need::Primary),
        ("SELECT * FROM t FOR UPDATE", Need::Primary),
        ("SELECT * FROM t FOR SHARE", Need::Primary),
        ("SELECT nextval('s')", Need::Primary),
        ("SELECT gid FROM pg_prepared_xacts", Need::Primary),
        ("SELECT * FROM pg_catalog.pg_stat_replication", Need::Primary),
        (
            "SELECT count(*) FROM PG_LOCKS WHERE locktype = 'advisory'",
            Need::Primary,
        ),
        (
            "SELECT x FROM t WHERE EXISTS (SELECT 1 FROM pg_stat_activity)",
            Need::Primary,
        ),
        ("SELECT txid_status(1234)", Need::Primary),
        ("SELECT current_setting('transaction_read_only')", Need::Primary),
        (
            "SELECT pg_catalog.current_setting('Transaction_Read_Only'), 1",
            Need::Primary,
        ),
        ("SELECT current_setting('work_mem')", Need::Read),
        ("SHOW transaction_read_only", Need::Primary),
        ("SHOW work_mem", Need::Read),
        ("SELECT * FROM pg_class", Need::Read),
        ("SELECT public.setval('s', 1)", Need::Primary),
        ("SELECT pg_advisory_xact_lock(1)", Need::Primary),
        ("SELECT * INTO t2 FROM t", Need::Primary),
        ("EXPLAIN ANALYZE DELETE FROM t", Need::Primary),
        ("SELECT 1; DELETE FROM t", Need::Primary),
        ("/* shardwire: primary */ SELECT 1", Need::Primary),
        ("SELECT 1 /* shardwire:primary */", Need::Primary),
        ("/* other */ SELECT 1", Need::Read),
        ("this is not sql", Need::Primary),
        ("BEGIN", Need::Primary),
        ("BEGIN READ ONLY", Need::Read),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Need::Read,
        ),
    ];
    for (sql, want) in table {
        assert_eq!(need(sql), want, "{sql}");
    }
}

#[test]
fn configured_functions_force_primary() {
    let mut f = funcs();
    assert_eq!(analyze("SELECT audit_log('x')", &f).need, Need::Read);
    f.insert("audit_log".into());
    assert_eq!(analyze("SELECT audit_log('x')", &f).need, Need::Primary);
}

#[test]
fn transactions() {
    let f = funcs();
    assert_eq!(analyze("BEGIN", &f).tx, TxEffect::Begin { read_only: false });
    assert_eq!(analyze("begin read only", &f).tx, TxEffect::Begin { read_only: true });
    assert_eq!(analyze("COMMIT", &f).tx, TxEffect::End);
    assert_eq!(analyze("ROLLBACK", &f).tx, TxEffect::End);
    assert_eq!(analyze("SELECT 1", &f).tx, TxEffect::None);
    // ROLLBACK TO SAVEPOINT does not end the transaction; savepoints are tracked for SET.
    let r = analyze("ROLLBACK TO SAVEPOINT Before_Update", &f);
    assert_eq!(r.tx, TxEffect::None);
    assert_eq!(
        r.set_ops,
        vec![SetOp::RollbackTo {
            name: "before_update".into()
        }]
    );
    assert_eq!(
        analyze("SAVEPOINT \"Quoted\"", &f).set_ops,
        vec![SetOp::Savepoint { name: "Quoted".into() }]
    );
    assert_eq!(
        analyze("RELEASE SAVEPOINT a", &f).set_ops,
        vec![SetOp::Release { name: "a".into() }]
    );
}

#[test]
fn session_parameters() {
    let f = funcs();
    let a = analyze("SET search_path TO app, public", &f);
    assert!(matches!(&a.set_ops[..], [SetOp::Set { name, .. }] if name == "search_path"));
    let SetOp::Set { sql, .. } = &a.set_ops[0] else {
        unreachable!()
    };
    // The replayed text must itself analyze to the same change.
    assert_eq!(analyze(sql, &f).set_ops, a.set_ops);
    assert!(analyze("SET LOCAL search_path TO app", &f).set_ops.is_empty());
    assert!(matches!(&analyze("SET TIME ZONE 'UTC'", &f).set_ops[..], [SetOp::Set { name, .. }] if name == "timezone"));
    assert_eq!(
        analyze("RESET search_path", &f).set_ops,
        vec![SetOp::Reset {
            name: "search_path".into()
        }]
    );
    assert_eq!(analyze("RESET ALL", &f).set_ops, vec![SetOp::ResetAll]);
    assert_eq!(analyze("DISCARD ALL", &f).set_ops, vec![SetOp::ResetAll]);
    assert!(
        analyze("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &f)
            .set_ops
            .is_empty()
    );
    assert!(
        analyze("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &f)
            .pins_session
            .is_none()
    );
}

#[test]
fn pinning() {
    let f = funcs();
    for sql in [
        "PREPARE p AS SELECT 1",
        "LISTEN chan",
        "CREATE TEMP TABLE t (a int)",
        "SELECT pg_advisory_lock(1)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ] {
        assert!(analyze(sql, &f).pins_session.is_some(), "{sql}");
    }
    for sql in [
        "SELECT pg_advisory_xact_lock(1)",
        "CREATE TABLE t (a int)",
        "DECLARE c CURSOR FOR SELECT 1",
    ] {
        assert!(analyze(sql, &f).pins_session.is_none(), "{sql}");
    }
}

#[test]
fn deallocate_facts() {
    use super::Dealloc;
    let f = |sql: &str| super::analyze(sql, &std::collections::HashSet::new()).dealloc;
    assert_eq!(f("DEALLOCATE ALL"), Some(Dealloc::All));
    assert_eq!(f("DEALLOCATE PREPARE all"), Some(Dealloc::All));
    assert_eq!(f("DISCARD ALL"), Some(Dealloc::All));
    assert_eq!(f("DEALLOCATE _pg3_0"), Some(Dealloc::Named("_pg3_0".into())));
    assert_eq!(f("DEALLOCATE \"All\""), Some(Dealloc::Named("All".into())));
    assert_eq!(f("DEALLOCATE s1; SELECT 1"), None, "not answered alone");
    assert_eq!(f("DISCARD PLANS"), None);
}

#[test]
fn settings_named_by_parameters_are_left_to_the_bind() {
    let f = |sql: &str| {
        let f = analyze(sql, &funcs());
        (f.need, f.setting_param)
    };
    assert_eq!(
        f("SELECT current_setting($2), current_setting($1)"),
        (Need::Read, Some(1))
    );
    assert_eq!(f("SELECT current_setting($1::text)"), (Need::Read, Some(0)));
    assert_eq!(f("SELECT current_setting('work_mem')"), (Need::Read, None));
    assert_eq!(f("SELECT current_setting($1) FROM t FOR UPDATE"), (Need::Primary, None));
}

#[test]
fn proxy_calls() {
    let f = |sql: &str| analyze(sql, &funcs()).proxy_call;
    let signal = |terminate, pid| Some(ProxyCall::Signal { terminate, pid });
    assert_eq!(f("SELECT shardwire.next_id()"), Some(ProxyCall::NextId));
    assert_eq!(
        f("select shardwire.next_ids($1)"),
        Some(ProxyCall::NextIds(Count::Param(0)))
    );
    assert_eq!(
        f("SELECT shardwire.next_ids(5::int)"),
        Some(ProxyCall::NextIds(Count::Lit(5)))
    );
    assert_eq!(f("select pg_terminate_backend(1234)"), signal(true, Count::Lit(1234)));
    assert_eq!(
        f("SELECT pg_catalog.pg_terminate_backend($1::int)"),
        signal(true, Count::Param(0))
    );
    assert_eq!(f("select pg_cancel_backend('77')"), signal(false, Count::Lit(77)));
    // Forms only the server can answer: a timeout argument, a pid computed by the query, a FROM.
    assert_eq!(f("select pg_terminate_backend(1234, 1000)"), None);
    assert_eq!(f("select pg_terminate_backend(pg_backend_pid())"), None);
    assert_eq!(
        f("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'x'"),
        None
    );
    assert_eq!(f("select pg_cancel_backend(1), 2"), None);
}
