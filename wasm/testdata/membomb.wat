;; Malicious: grows memory one page at a time until refused, then traps.
(module
  (memory (export "memory") 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func (export "segedge_eval") (param i32) (result i32)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
