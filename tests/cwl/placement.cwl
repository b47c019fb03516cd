cwlVersion: v1.2
class: Workflow
$namespaces: {arv: "http://arvados.org/cwl#"}
requirements:
  StepInputExpressionRequirement: {}
inputs:
  name: {type: string, default: sample-1}
outputs:
  hinted: {type: File, outputSource: hinted/out}
  plain: {type: File, outputSource: plain/out}
steps:
  hinted:
    in: {name: name}
    out: [out]
    run:
      class: CommandLineTool
      requirements:
        arv:PartitionRequirement: {partition: [fast-nodes]}
        arv:APIRequirement: {}
        ToolTimeLimit: {timelimit: 100}
      hints:
        arv:OutputStorageClass: {intermediateStorageClass: default}
        arv:RuntimeConstraints: {keep_cache: 300}
        arv:KeepCacheTypeRequirement: {keepCacheType: ram_cache}
        arv:ReuseRequirement: {enableReuse: false}
        arv:ProcessProperties:
          processProperties:
            sample: $(inputs.name)
            pipeline: placement-test
      inputs: {name: string}
      baseCommand: echo
      arguments: [$(inputs.name)]
      stdout: hinted.txt
      outputs: {out: stdout}
  plain:
    in: {name: name}
    out: [out]
    run:
      class: CommandLineTool
      inputs: {name: string}
      baseCommand: echo
      arguments: [plain, $(inputs.name)]
      stdout: plain.txt
      outputs: {out: stdout}
