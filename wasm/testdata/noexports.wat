;; Missing segedge_eval, segedge_output_ptr and the memory export.
(module
  (memory 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 4096)))
