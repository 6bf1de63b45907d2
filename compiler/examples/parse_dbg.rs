fn main() {
    let path = std::env::args().nth(1).unwrap();
    let src = std::fs::read_to_string(&path).unwrap();
    match qatc::syntax::parse_qspec(&src) {
        Ok(m) => print!("{}", qatc::syntax::print_qspec(&m)),
        Err(d) => print!("{}", d.render_plain(&path, &src)),
    }
}
