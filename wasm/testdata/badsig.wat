;; segedge_eval takes an i64 and segedge_input_cap returns nothing.
(module
  (memory (export "memory") 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap"))
  (func (export "segedge_output_ptr") (result i32) (i32.const 8192))
  (func (export "segedge_eval") (param i64) (result i32) (i32.const 0)))
