;; Malicious: unbounded recursion, exhausting the stack.
(module
  (memory (export "memory") 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))
  (func (export "segedge_eval") (param i32) (result i32) (call $r (local.get 0))))
