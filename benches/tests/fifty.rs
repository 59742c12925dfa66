//! Fifty small E2E tests against the bench server (`HANGCHECK_ADDR_PING`), for the runner
//! overhead benchmark: each connects, makes ten round trips and leaves.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn round_trips() {
    let addr = std::env::var("HANGCHECK_ADDR_PING").expect("HANGCHECK_ADDR_PING");
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..10 {
        stream.write_all(b"PING\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "PONG\n");
    }
}

macro_rules! tests {
    ($($name:ident)*) => { $( #[test] fn $name() { round_trips(); } )* };
}

tests! {
    t01 t02 t03 t04 t05 t06 t07 t08 t09 t10 t11 t12 t13 t14 t15 t16 t17 t18 t19 t20 t21 t22 t23 t24 t25
    t26 t27 t28 t29 t30 t31 t32 t33 t34 t35 t36 t37 t38 t39 t40 t41 t42 t43 t44 t45 t46 t47 t48 t49 t50
}
